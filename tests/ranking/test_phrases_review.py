"""Review: quoted phrases are required — as a demanding researcher types them.

Spelling variants inside a phrase (hyphen or space, Greek letter or its name), one-letter
words (``hepatitis A``), capitals, other quote marks, phrases with filters, date sort and
pages, the HTTP API (no 500s; an old index), saved searches, snippets, and the cost of a
rare phrase in semantic mode.

Records go the real way: :class:`ingest.records.Record` through :class:`ingest.store.Store`,
a real published index (:func:`ranking.refresh.refresh_index` with the tiny random
encoder), then the surface under test — on SQLite and on PostgreSQL (one corpus per
database, built once for the module). The cost test uses the hashed bag-of-words index of
:mod:`tests.ranking.corpus`.

The ``xfail(strict=True)`` tests state what the user expects where the code does
otherwise; the plain ones pin what holds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from litpulse.app.api import create_app
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from litpulse.pipeline.saved_searches import add_search, edit_search
from ranking import index_files, lexical
from ranking.search import SearchFilters, run_search, search
from tests.ranking.corpus import (
    BOTH_DATABASES,
    dated,
    indexed_world,
    make_article,
    search_in,
    store_and_index,
    world_on,
)
from tests.tiny_encoder import build_tiny_encoder

P = 42000000

#: offset -> (title, abstract, MeSH, year, language)
CORPUS: dict[int, tuple[str, str, tuple[str, ...], int, str]] = {
    # compound words, one spelling each
    1: ("Non-small-cell lung cancer survival after lobectomy", "Lobectomy outcomes.",
        ("Lung Neoplasms",), 2020, "eng"),
    2: ("Type-2 diabetes and walking in adults", "Walking lowered glucose.",
        ("Diabetes Mellitus",), 2020, "eng"),
    3: ("SARS CoV-2 infection in children", "Mild disease was common.",
        ("COVID-19",), 2021, "eng"),
    4: ("\u03b1-Synuclein aggregation in Parkinson disease", "Lewy bodies were counted.",
        ("Parkinson Disease",), 2019, "eng"),
    5: ("Health-related quality of life after stroke", "Patients reported outcomes.",
        ("Stroke",), 2018, "eng"),
    6: ("Quality of life in cancer survivors", "Fatigue was frequent.",
        ("Neoplasms",), 2018, "eng"),
    7: ("IL-6 signalling in sepsis", "Interleukin 6 in septic shock.", ("Sepsis",), 2019,
        "eng"),
    # one-letter words
    8: ("Hepatitis B vaccination in infants", "Coverage of the birth dose rose.",
        ("Hepatitis B",), 2017, "eng"),
    9: ("Hepatitis A outbreak in a primary school", "Contaminated water was the source.",
        ("Hepatitis A",), 2017, "eng"),
    # capitals
    10: ("In vitro fertilization outcomes in older women", "Live births were recorded.",
         ("Fertilization in Vitro",), 2016, "eng"),
    11: ("ROLE OF NO IN SEPTIC SHOCK", "Nitric oxide synthase was inhibited.",
         ("Shock, Septic",), 1995, "eng"),
    # "heart failure": five holders of several years and languages, two with the words apart
    20: ("Heart failure in elderly outpatients", "Chronic heart failure over two years.",
         ("Heart Failure",), 2015, "eng"),
    21: ("Readmissions for heart failure", "Readmission rates after discharge.",
         ("Heart Failure",), 2019, "eng"),
    22: ("Diuretics in acute heart failure", "Loop diuretics were compared.",
         ("Heart Failure", "Diuretics"), 2021, "eng"),
    23: ("Insuffisance cardiaque: heart failure in France", "Registre national.",
         ("Heart Failure",), 2022, "fre"),
    24: ("Exercise training in heart failure", "Walking improved capacity.",
         ("Heart Failure", "Exercise"), 2023, "eng"),
    25: ("Kidney failure after heart surgery", "Renal failure in heart surgery patients.",
         ("Kidney",), 2023, "eng"),
    26: ("Heart outcomes of kidney failure", "Heart disease after renal failure.",
         ("Kidney",), 2023, "eng"),
    # the phrase late in a long abstract, its words apart early
    30: ("Follow-up of discharged patients",
         "The heart of the problem we studied over many years in our region is that the "
         "failure to arrange a timely visit after discharge from the ward is common, and "
         "it is costly for patients, for families and for the health service as a whole. "
         "We enrolled consecutive adults from twelve hospitals between 2010 and 2015, and "
         "we followed each of them with telephone calls and clinic visits for two full "
         "years after they left the ward, recording every visit and every admission. "
         "Readmission for heart failure was the commonest outcome.",
         ("Patient Discharge",), 2020, "eng"),
}  # fmt: skip


def _records() -> list[Any]:
    return [dated(make_article(P + off, title, abstract, mesh=mesh, languages=(lang,)), year)
            for off, (title, abstract, mesh, year, lang) in CORPUS.items()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-phrases"), max_seq_length=32)


def _build(home: Path, url: str, tiny: str) -> Settings:
    s: Settings = indexed_world(home, url, tiny, _records(), api_rate_burst=100000,
                                rerank_candidates=4)
    return s


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny: str
) -> Iterator[Settings]:
    yield from world_on(request.param, tmp_path_factory, "phrases_review",
                        lambda home, url: _build(home, url, tiny))


@pytest.fixture(scope="module")
def client(world: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


def _found(s: Settings, query: str, mode: str = "lexical", **kw: Any) -> set[int]:
    return {h.pmid - P for h in search(s, query, k=50, mode=mode, **kw)}


HEART = {20, 21, 22, 23, 24, 30}

# ----------------------------------------------------------------------- what holds


def test_readme_examples_hold(world: Settings) -> None:
    # README "Query syntax": plurals stemmed, stop words aside, IL6 for IL-6
    assert _found(world, '"heart failures"') == HEART
    assert _found(world, '"quality of life"') == {5, 6}
    assert _found(world, '"IL6 signalling"') == {7}
    # the same spelling of a compound always matches itself
    assert _found(world, '"non-small-cell lung cancer"') == {1}
    assert _found(world, '"SARS CoV-2 infection"') == {3}
    assert _found(world, '"\u03b1-synuclein aggregation"') == {4}


def test_curly_quotes_and_a_whole_query_phrase_are_required_in_every_mode(
    world: Settings,
) -> None:
    for mode in ("hybrid", "semantic", "lexical"):
        assert _found(world, "\u201cheart failure\u201d", mode) == HEART, mode
        assert _found(world, '"heart failure"', mode) == HEART, mode
        assert _found(world, '"heart failure" kidney surgery', mode) == HEART, mode


def test_a_phrase_with_filters_date_sort_and_pages(world: Settings) -> None:
    """hybrid, English only, newest first, one at a time: each page holds the phrase, the
    pages are disjoint and together every English holder; the last says no more."""
    filters = SearchFilters(language="eng", since=dt.date(2015, 1, 1))
    seen: list[int] = []
    for offset in range(6):
        r = run_search(world, '"heart failure" kidney', k=1, offset=offset, filters=filters,
                       sort="date", mode="hybrid")
        seen += [h.pmid - P for h in r.hits]
        if not r.has_more:
            break
    assert sorted(seen) == sorted(HEART - {23}) and not r.has_more


def test_the_api_answers_phrases_and_refuses_stop_word_phrases_without_500s(
    world: Settings, client: TestClient
) -> None:
    for mode in ("hybrid", "semantic", "lexical"):
        r = client.get("/search", params={"q": '"heart failure" kidney', "k": "20",
                                          "mode": mode})
        assert r.status_code == 200, r.text
        assert {h["pmid"] - P for h in r.json()["results"]} == HEART, mode
    for q in ('"of the" heart', '"the"', '"" "to be"', "\u201cand\u201d heart failure"):
        r = client.get("/search", params={"q": q})
        assert r.status_code == 400, (q, r.text)
    for q in ('"heart failure', 'heart failure"', '""', '"a "b" c"', '12" "heart failure"',
              '"\u03b1"', '"-"', '"heart failure" ' * 40):
        r = client.get("/search", params={"q": q[:512]})
        assert r.status_code in (200, 400), (q, r.text)


def test_an_old_lexical_index_refuses_phrases_on_the_api_naming_the_refresh(
    world: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = index_files.open_published

    def old(settings: Settings, engine: Any = None) -> Any:
        index = real(settings, engine)
        lex = index.lexical
        aged = dataclasses.replace(lex, _stats=dataclasses.replace(lex._stats, format=5))
        return dataclasses.replace(index, lexical=aged)

    monkeypatch.setattr(index_files, "open_published", old)
    r = client.get("/search", params={"q": '"heart failure"'})
    assert r.status_code == 503 and "litpulse index refresh" in r.json()["detail"], r.text
    r = client.get("/search", params={"q": "heart failure"})  # words: searched as before
    assert r.status_code == 200, r.text


def test_saved_searches_refuse_a_stop_word_phrase_on_add_and_edit(world: Settings) -> None:
    with pytest.raises(ConfigError, match="quoted phrase"):
        add_search(world, name="x", query='"of the" heart failure', owner="alice")
    saved = add_search(world, name="hf", query='"heart failure" outcomes', owner="alice")
    with pytest.raises(ConfigError, match="quoted phrase"):
        edit_search(world, saved.id, query='"the" outcomes')


# ------------------------------------------------------------------------ defects


# ranking/lexical.py bio_tokens (document mode) + phrase_terms: a compound word is indexed
# as its segments *followed by* their joined runs (``type-2`` -> type, 2, type2), so a
# phrase matches another spelling only when the compound is its last word: typed with a
# space where the article has a hyphen (or the reverse, or a Greek letter's name for the
# letter) the phrase's terms are not consecutive in the article, and the article is not
# found — "non-small cell lung cancer" misses "non-small-cell lung cancer", "type 2
# diabetes" misses "type-2 diabetes", "quality-of-life" misses "quality of life". Fix:
# match phrases on segments only (e.g. a positions field of segments, or joined runs given
# the position of their first segment), for documents and phrases alike.
def test_a_phrase_finds_its_compound_in_another_spelling(world: Settings) -> None:
    missed = [
        (query, pmid, mode)
        for query, pmid in [
            ('"non-small cell lung cancer"', 1),  # the article: non-small-cell
            ('"non small cell lung cancer"', 1),
            ('"type 2 diabetes"', 2),  # type-2 diabetes
            ('"SARS-CoV-2 infection"', 3),  # SARS CoV-2 infection
            ('"alpha synuclein aggregation"', 4),  # \u03b1-synuclein
            ('"health related quality of life"', 5),  # health-related
            ('"quality-of-life"', 6),  # quality of life
        ]
        for mode in ("lexical", "hybrid")
        if pmid not in _found(world, query, mode)
    ]
    assert not missed


# ranking/lexical.py _lower/_CAPS_WORD (2-5 capitals) and phrase_terms: the one-letter
# word "A" is tantivy's stop word "a", so '"hepatitis A"' requires only "hepatitis" and
# returns hepatitis B articles (as '"vitamin A"' any vitamin, '"influenza A"' any
# influenza); the quotes promise the words one after the other. Fix: keep a capital
# letter after a word (hepatitis A, vitamin A, type A) as a term in capitals, like NO.
def test_hepatitis_a_in_quotes_is_not_hepatitis_b(world: Settings) -> None:
    for mode in ("lexical", "hybrid"):
        assert _found(world, '"hepatitis A"', mode) == {9}


# ranking/lexical.py phrase_terms (via _lower/_shouted): a quoted phrase is analysed alone,
# not as part of its query, so in a query typed in capitals ('"IN VITRO" FERTILIZATION
# OUTCOMES') the query's words are lower-cased (shouted) but the phrase "IN VITRO" (no
# word of six letters) keeps "IN" as an abbreviation term that no article holds: nothing
# is found, though the unquoted query finds the article. Fix: judge capitals on the
# whole query for its phrases too (query_phrases passes the query's _shouted verdict).
def test_a_phrase_in_a_query_typed_in_capitals(world: Settings) -> None:
    assert 10 in _found(world, "IN VITRO FERTILIZATION OUTCOMES")
    assert 10 in _found(world, '"IN VITRO" FERTILIZATION OUTCOMES')


# ranking/lexical.py _lower/_shouted at index time vs phrase_terms: a title wholly in
# capitals is indexed lower case, dropping "NO" as a stop word, while the phrase typed
# with the abbreviation in capitals keeps "NO": the researcher copying the title's words
# ("role of NO in septic shock") does not find the title that holds them. Fix: let a
# capital stop-word abbreviation of a phrase match its absence too (or index a shouted
# text's stop-word abbreviations as NO as well).
def test_a_phrase_with_an_abbreviation_finds_a_title_in_capitals(world: Settings) -> None:
    assert 11 in _found(world, '"role of NO in septic shock"')


# ranking/lexical.py _QUOTED: only "..." and \u201c/\u201e ... \u201d are read as phrases,
# so a German pair („…“, the closing mark U+201C) or a mixed pair (“…" from an edited
# query) quotes nothing and the phrase is silently not required: the words apart
# (kidney failure after heart surgery) come back. Fix: any opening double quote
# (" \u201c \u201e) closed by any closing one (" \u201d \u201c).
def test_other_double_quote_pairs_are_phrases_too(world: Settings) -> None:
    for query in ("\u201eheart failure\u201c surgery", "\u201cheart failure\" surgery"):
        assert lexical.query_phrases(query) == (("heart", "failur"),), query
        assert not _found(world, query) & {25, 26}, query


# ranking/snippets.py snippet/_window (called by ranking/details.with_details): the
# snippet is the window with the most weight of distinct terms, earliest on a tie; the
# quoted phrase plays no part, so a hit holding "heart failure" only late in its abstract
# shows the opening sentence where "heart" and "failure" are apart — the result list
# never shows why it matched the required phrase. Fix: prefer the windows holding the
# quoted phrases (pass query_phrases to snippet; weigh a phrase occurrence above its
# words apart).
def test_the_snippet_shows_the_quoted_phrase(world: Settings) -> None:
    hits = {h.pmid - P: h for h in search(world, '"heart failure"', k=50, mode="lexical")}
    assert 30 in hits
    snip = hits[30].snippet
    assert snip is not None and "heart failure" in snip.text.lower(), snip


# ranking/search.py _candidates: in semantic mode ``lex`` is None, so the lexical list
# never says that every phrase holder has been seen (``dense_complete`` is set only
# "if lex is not None and lexical_exhausted"); a phrase that few articles hold makes the
# neighbour list widen to the whole vector index and LexicalIndex.matching run over every
# PMID (all of PubMed: 38 M neighbours) before the search answers. Fix: in semantic mode
# too, know the phrase's holders from the lexical index (count them, or list them when
# few and rank them by their stored vectors), and stop widening once all are seen.
def test_a_rare_phrase_in_semantic_mode_does_not_fetch_the_whole_index(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    engine = db.connect(sqlite_settings)
    records = [make_article(p, f"Heart surgery and kidney failure {p}",
                            f"Failure of the heart valve in case {p}.") for p in range(1, 241)]
    records.append(make_article(500, "Heart failure outcomes", "Readmission."))
    index, lex = store_and_index(engine, tmp_path, records)
    s = sqlite_settings.replace(rerank_candidates=20)
    hybrid = search_in(s, engine, '"heart failure" kidney surgery', index=index, lexical=lex,
                       mode="hybrid")
    assert [h.pmid for h in hybrid.hits] == [500] and max(index.calls) < index.size
    index.calls.clear()
    semantic = search_in(s, engine, '"heart failure" kidney surgery', index=index,
                         lexical=lex, mode="semantic")
    assert [h.pmid for h in semantic.hits] == [500]
    assert max(index.calls) < index.size, index.calls
