"""Review: the search filters end to end (since/until, MeSH, publication type, language,
abstract, retracted) and how each surface passes them: :func:`ranking.search.search`, the
CLI (``litpulse search``), the HTTP API (``GET /search``) and the saved searches' digest.

Every record goes the real way: PubMed XML through :func:`ingest.parse.parse_bytes`,
:class:`ingest.store.Store`, a real published index (:func:`ranking.refresh.refresh_index`
with the tiny random encoder), then the surface under test — on SQLite and on PostgreSQL.

The ``xfail(strict=True)`` tests state what a demanding user expects where the code does
otherwise (a filter that silently answers nothing, or more than it says); the plain ones
pin what holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from ingest.parse import parse_bytes
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.app.api import create_app
from litpulse.app.cli import build_parser
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import checkpoints, term_forms
from litpulse.core.settings import Settings
from litpulse.pipeline.digest import matches_of, run_digest
from litpulse.pipeline.saved_searches import add_search
from ranking import embed as em
from ranking.refresh import refresh_index
from ranking.search import SearchFilters, run_search, search
from tests.ranking.corpus import BOTH_DATABASES, world_on
from tests.tiny_encoder import build_tiny_encoder

README = Path(__file__).resolve().parents[2] / "README.md"
QUERY = "malaria vaccines"

# ------------------------------------------------------------------------------ records

#: a MeSH heading: descriptor, its MajorTopicYN, and (qualifier, MajorTopicYN) pairs
Heading = tuple[str, bool, tuple[tuple[str, bool], ...]]


def _yn(flag: bool) -> str:
    return "Y" if flag else "N"


def _article(
    pmid: int,
    title: str,
    *,
    mesh: tuple[Heading, ...] = (),
    ptypes: tuple[str, ...] = ("Journal Article",),
    languages: tuple[str, ...] = ("eng",),
    abstract: str = "A study of what the title says.",
    pub_date: str = "<Year>2020</Year>",
    article_date: str = "",
    revised: tuple[int, int, int] = (2021, 1, 1),
    status: str = "MEDLINE",
) -> str:
    heads = "".join(
        f'<MeshHeading><DescriptorName UI="D{pmid}{i}" MajorTopicYN="{_yn(major)}">{d}'
        "</DescriptorName>"
        + "".join(
            f'<QualifierName UI="Q{pmid}{i}{j}" MajorTopicYN="{_yn(qm)}">{q}</QualifierName>'
            for j, (q, qm) in enumerate(quals)
        )
        + "</MeshHeading>"
        for i, (d, major, quals) in enumerate(mesh)
    )
    types = "".join(
        f'<PublicationType UI="P{i}">{p}</PublicationType>' for i, p in enumerate(ptypes)
    )
    langs = "".join(f"<Language>{code}</Language>" for code in languages)
    y, m, d = revised
    summary = f"<Abstract><AbstractText>{abstract}</AbstractText></Abstract>" if abstract else ""
    return (
        f'<PubmedArticle><MedlineCitation Status="{status}"><PMID Version="1">{pmid}</PMID>'
        f"<DateRevised><Year>{y}</Year><Month>{m:02d}</Month><Day>{d:02d}</Day></DateRevised>"
        f"<Article><Journal><JournalIssue><PubDate>{pub_date}</PubDate></JournalIssue>"
        f"<Title>J Test</Title></Journal><ArticleTitle>{title}</ArticleTitle>{summary}"
        f"{article_date}{langs}<PublicationTypeList>{types}</PublicationTypeList></Article>"
        f"<MeshHeadingList>{heads}</MeshHeadingList></MedlineCitation><PubmedData/>"
        "</PubmedArticle>"
    )


def _records(*articles: str, name: str = "filters_review.xml") -> list[Record]:
    body = "".join(articles)
    xml = f'<?xml version="1.0" encoding="utf-8"?>\n<PubmedArticleSet>{body}</PubmedArticleSet>'
    items = parse_bytes(xml.encode(), source_ref=SourceRef("file", name))
    records = [i for i in items if isinstance(i, Record)]
    assert len(records) == len(articles), items
    return records


def _h(descriptor: str, major: bool = False, *quals: tuple[str, bool]) -> Heading:
    return (descriptor, major, tuple(quals))


CORPUS = [
    _article(4101, "Malaria vaccines for children in Africa",
             mesh=(_h("Humans"), _h("Malaria Vaccines", False, ("immunology", False)),
                   _h("Child"))),
    # Neoplasms as a major topic, with the qualifier genetics
    _article(4102, "Malaria vaccines and tumour genetics",
             mesh=(_h("Neoplasms", True, ("genetics", True)), _h("Humans")),
             ptypes=("Journal Article", "Review")),
    _article(4103, "Malaria vaccines trial later retracted",
             mesh=(_h("Humans"), _h("Malaria Vaccines")),
             ptypes=("Journal Article", "Retracted Publication")),
    # Neoplasms not a major topic, with another qualifier
    _article(4104, "Malaria vaccines in mice with tumours",
             mesh=(_h("Neoplasms", False, ("drug therapy", False)), _h("Animals"))),
    _article(4105, "Vaccins contre le paludisme: malaria vaccines", mesh=(_h("Humans"),),
             languages=("fre",)),
    # a rare descriptor on an article far from the query (no query word in it)
    _article(4106, "Dry eyes and dry mouth in older women",
             mesh=(_h("Sjogren's Syndrome"), _h("Humans"))),
    # published online 2019-11-15 (its best date), in the January 2020 issue
    _article(4107, "Malaria vaccines published ahead of print",
             mesh=(_h("Humans"),), pub_date="<Year>2020</Year><Month>Jan</Month>",
             article_date='<ArticleDate DateType="Electronic"><Year>2019</Year>'
                          "<Month>11</Month><Day>15</Day></ArticleDate>"),
]  # fmt: skip
PMIDS = {4101, 4102, 4103, 4104, 4105, 4106, 4107}


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-filters"), max_seq_length=32)


def _tiny_settings(s: Settings, tiny: str) -> Settings:
    return s.replace(model=tiny, max_seq_length=32, search_server_url="")


def _world(home: Path, url: str, tiny: str) -> Settings:
    s = _tiny_settings(Settings.from_env({}, home=home, database_url=url), tiny)
    Store(db.connect(s)).apply(_records(*CORPUS))
    report = refresh_index(s)
    assert report.published and report.size == len(PMIDS)
    return s


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny: str
) -> Iterator[Settings]:
    """The corpus stored and indexed, on SQLite and on PostgreSQL (a database of its own)."""
    yield from world_on(request.param, tmp_path_factory, "filters",
                        lambda home, url: _world(home, url, tiny))


@pytest.fixture(scope="module")
def client(world: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def store(settings: Settings, tiny: str) -> Settings:
    """An empty store of its own (the conftest's, on both databases), on the tiny model."""
    em.clear_cache()
    return _tiny_settings(settings, tiny)


def _pmids(hits: Any) -> set[int]:
    return {h.pmid for h in hits}


def _api(client: TestClient, params: list[tuple[str, str]]) -> Any:
    return client.get("/search", params=[("q", QUERY), ("k", "50"), *params])


def _cli(s: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    args = build_parser().parse_args(["search", QUERY, "-k", "50", "--json", *argv])
    assert args.func(args, s) == 0
    return json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------- what holds


def test_combined_folded_filters_agree_across_core_cli_and_api(
    world: Settings, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two MeSH terms (one in capitals, one with a non-breaking hyphen), a publication
    type with a dash and a language in capitals: the same articles from every surface."""
    mesh = ["HUMANS", "Malaria\u2011Vaccines"]
    core = _pmids(
        search(world, QUERY, k=50, mesh=mesh, publication_type="journal-article", language="ENG")
    )
    assert core == {4101}  # 4103 is retracted
    api = _api(
        client, [("mesh", m) for m in mesh] + [("type", "journal-article"), ("language", "ENG")]
    )
    assert api.status_code == 200, api.text
    assert {h["pmid"] for h in api.json()["results"]} == core
    argv = [a for m in mesh for a in ("--mesh", m)] + [
        "--type",
        "journal-article",
        "--language",
        "ENG",
    ]
    assert {h["pmid"] for h in _cli(world, argv, capsys)["results"]} == core
    # and the retracted one only on request, on every surface
    with_retracted = _pmids(search(world, QUERY, k=50, mesh=mesh, include_retracted=True))
    assert with_retracted == {4101, 4103}
    api = _api(client, [("mesh", m) for m in mesh] + [("include_retracted", "true")])
    assert {h["pmid"] for h in api.json()["results"]} == with_retracted


@pytest.mark.parametrize("mode", ["hybrid", "semantic"])
def test_a_rare_folded_mesh_term_beyond_the_candidate_pool_is_found_on_every_page(
    world: Settings, mode: str
) -> None:
    """One candidate of each list only: the one article carrying the descriptor (no query
    word in it) is still found, typed with an accent and a curly apostrophe, and a page
    past it is empty."""
    narrow = world.replace(rerank_candidates=1)
    f = SearchFilters(mesh=("Sjögren’s syndrome",))
    first = run_search(narrow, QUERY, k=1, filters=f, mode=mode, offset=0)
    assert _pmids(first.hits) == {4106} and not first.has_more
    assert run_search(narrow, QUERY, k=1, filters=f, mode=mode, offset=1).hits == ()
    assert _pmids(run_search(narrow, QUERY, k=5, filters=f, mode=mode).hits) == {4106}


def test_a_mesh_term_a_revision_removed_no_longer_matches(store: Settings) -> None:
    """article_terms follows the latest revision (term_forms keeps the spelling, which
    then matches nothing)."""
    s = store
    Store(db.connect(s)).apply(_records(
        _article(4301, "Malaria vaccines and tumours", mesh=(_h("Neoplasms"), _h("Humans")))
    ))  # fmt: skip
    assert refresh_index(s).published
    assert _pmids(search(s, QUERY, mesh="Neoplasms")) == {4301}
    Store(db.connect(s)).apply(_records(
        _article(4301, "Malaria vaccines and tumours", mesh=(_h("Humans"),),
                 revised=(2022, 1, 1)),
        name="revision.xml",
    ))  # fmt: skip
    assert _pmids(search(s, QUERY, mesh="Neoplasms")) == set()
    assert _pmids(search(s, QUERY, mesh="humans")) == {4301}


# ------------------------------------------------------------------------ defects


# litpulse/pipeline/digest.py:297 (_new_articles) takes only articles first stored after the
# watermark (ingested_at); a revision does not move ingested_at. MEDLINE indexes MeSH (and
# often the publication types) weeks after a citation is first stored, so an article that
# came in without MeSH and got its descriptors in a revision never meets a saved search
# filtered by MeSH (README's own example: `alerts add … --mesh Humans`), although
# `litpulse search` with the same filter finds it.
def test_digest_meets_an_article_whose_mesh_arrives_in_a_revision(store: Settings) -> None:
    s = store
    engine = db.connect(s)
    Store(engine).apply(_records(_article(4201, "An older malaria paper", mesh=(_h("Humans"),))))
    assert refresh_index(s).published
    humans = add_search(
        s,
        name="humans",
        query=QUERY,
        owner="alice",
        min_score=0.0,
        filters=SearchFilters(mesh=("Humans",)),
    )
    plain = add_search(s, name="plain", query=QUERY, owner="alice", min_score=0.0)
    # first stored in process: no MeSH yet
    Store(engine).apply(_records(
        _article(4202, "Malaria vaccines in infants", status="In-Process"), name="new.xml"
    ))  # fmt: skip
    assert refresh_index(s).published
    run_digest(s)
    assert {m.pmid for m in matches_of(engine, plain.id)} == {4202}
    assert {m.pmid for m in matches_of(engine, humans.id)} == set()  # right: no MeSH yet
    # MEDLINE indexing: the revision carries the descriptors
    Store(engine).apply(_records(
        _article(4202, "Malaria vaccines in infants", mesh=(_h("Humans"), _h("Infant")),
                 revised=(2021, 3, 1)),
        name="indexed.xml",
    ))  # fmt: skip
    assert refresh_index(s).published
    assert 4202 in _pmids(search(s, QUERY, mesh="Humans"))  # search finds it now
    run_digest(s)
    assert 4202 in {m.pmid for m in matches_of(engine, humans.id)}


# ranking/search.py:299 (SearchFilters.clauses) always adds is_retracted IS false unless
# include_retracted, and ingest/fields.py:353 marks every "Retracted Publication" article
# retracted: the publication type PubMed users filter by to find retracted papers answers
# nothing, on every surface, without a word (neither implied nor refused).
def test_retracted_publication_type_is_not_silently_empty(client: TestClient) -> None:
    answer = _api(client, [("type", "Retracted Publication")])
    if answer.status_code == 400:  # refused, saying include_retracted is needed: fine
        return
    assert answer.status_code == 200, answer.text
    assert 4103 in {h["pmid"] for h in answer.json()["results"]}


# ranking/search.py:274-276 (SearchFilters.__post_init__) takes any text of up to 8
# characters as a language code: `--language English` (PubMed's english[la] works, and
# "French", "German", "Spanish" all fit) silently matches nothing, while "Portuguese"
# (10 characters) is refused. Either the common names map to their codes or anything that
# is not a code is refused.
def test_language_by_name_is_not_silently_empty(
    world: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        data = _cli(world, ["--language", "English"], capsys)
    except ConfigError:
        return  # refused: fine
    assert 4101 in {h["pmid"] for h in data["results"]}


# ranking/search.py:208-224 (_terms) and :315-323 (clauses): a MeSH filter is compared with
# the descriptor alone (article_terms holds no qualifiers: ingest/rows.py:239), and
# fold_term makes "Neoplasms/genetics" (PubMed's descriptor/qualifier form, also how its
# pages list MeSH) the words "neoplasms genetics", which no descriptor has: the filter
# silently answers nothing instead of matching the qualified heading or being refused.
def test_mesh_with_a_qualifier_is_not_silently_empty(client: TestClient) -> None:
    answer = _api(client, [("mesh", "Neoplasms/genetics")])
    if answer.status_code == 400:  # refused (qualifiers are not supported): fine
        return
    assert answer.status_code == 200, answer.text
    assert {h["pmid"] for h in answer.json()["results"]} == {4102}  # 4104: drug therapy


# litpulse/core/text.py fold_term drops "*" (not a letter or digit), so "Neoplasms*" —
# PubMed's mark of a major topic, as its pages show it — is taken as plain "Neoplasms"
# (ranking/search.py:315-323): the filter silently answers more than asked, the articles
# where Neoplasms is not a major topic too (article_terms.major is stored and read by no
# filter).
def test_major_topic_mark_is_not_silently_dropped(world: Settings) -> None:
    try:
        got = _pmids(search(world, QUERY, k=50, mesh="Neoplasms*"))
    except ConfigError:
        return  # refused: fine
    assert got == {4102}


@pytest.mark.parametrize("term", ["*Neoplasms", "* Neoplasms", "*Neoplasms*"])
def test_medline_leading_major_topic_mark_asks_for_a_major_topic(
    world: Settings, term: str
) -> None:
    """MEDLINE's own format (``MH  - *Neoplasms``, what EDirect's ``-format medline`` and
    a .nbib file show) marks a major topic before the descriptor: it was folded away and
    the filter answered every article carrying Neoplasms, major or not."""
    assert _pmids(search(world, QUERY, k=50, mesh=term)) == {4102}


def test_a_filter_term_naming_nothing_is_refused_on_every_surface(
    world: Settings, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """``*`` alone (the major-topic mark, no descriptor) or a publication type of no
    letter or digit answered 0 results without a word; refused now, as any bad term."""
    for name, value in (("mesh", "*"), ("type", "*"), ("mesh", "**")):
        answer = _api(client, [(name, value)])
        assert answer.status_code == 400, answer.text
        assert repr(value) in answer.json()["detail"]
    with pytest.raises(ConfigError, match="names no descriptor"):
        _cli(world, ["--mesh", "*"], capsys)  # `litpulse` prints it and exits 2
    with pytest.raises(ConfigError, match="names no publication type"):
        _cli(world, ["--type", "-"], capsys)


# ingest/store.py:319 (upgrade_term_forms) fills term_forms for a store made before it
# only from Store.apply, i.e. on the store's first write; litpulse/core/db.py:127 (_upgrade,
# run by every connect) creates the table empty. A server that only reads (`litpulse
# serve` beside an ingest that has not run yet, a frozen snapshot) then answers nothing
# for "Sjögren’s Syndrome" or "α-Synuclein", which ranking/search.py:238-242
# (SearchFilters' docstring) promises without a caveat; only the lower() fallback works.
def test_folded_mesh_filter_on_a_store_made_before_term_forms(store: Settings) -> None:
    s = store
    engine = db.connect(s)
    Store(engine).apply(_records(CORPUS[5], CORPUS[0]))
    assert refresh_index(s).published
    with engine.begin() as conn:  # as a store written before term_forms existed
        conn.execute(delete(term_forms))
        conn.execute(delete(checkpoints).where(checkpoints.c.key == "term_forms"))
    db.dispose_engines()  # fixed: a reading process of this release opens the store
    assert _pmids(search(s, "dry eyes", k=5, mesh="SJOGREN'S SYNDROME")) == {4106}
    assert _pmids(search(s, "dry eyes", k=5, mesh="Sjögren’s Syndrome")) == {4106}


# README.md:191 sums the filters up as "date range (of the best date, as recency's)", but
# ranking/search.py:302 (and README.md:102, SearchFilters' docstring) also let an article in
# by any day of its issue's period: the article published online 2019-11-15 (its best
# date) in the January 2020 issue is in a 2020 range. The summary says what the code does
# not do.
def test_readme_filter_summary_says_what_the_date_range_matches(world: Settings) -> None:
    got = _pmids(search(world, QUERY, k=50, since="2020-01-01", until="2020-12-31", mesh="Humans"))
    assert 4107 in got  # its issue is January 2020; its best date 2019-11-15
    assert "date range (of the best date, as recency's)" not in README.read_text()
